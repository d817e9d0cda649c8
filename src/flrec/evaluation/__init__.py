"""flrec.evaluation"""
