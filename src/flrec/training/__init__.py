"""flrec.training"""
