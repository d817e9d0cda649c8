"""flrec.data"""
