"""flrec.serving"""
