"""TODO: training/speed"""
