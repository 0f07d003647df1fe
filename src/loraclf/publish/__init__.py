"""TODO: publish"""
