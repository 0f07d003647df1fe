"""TODO: infer"""
