"""TODO: base"""
