"""What every stage shares: the error types whose messages the CLI prints as one line (errors), the one logging
path (logs), hardware facts and the precision vocabulary (device), the offline packaged models and data (sources)
and the version. It imports nothing of loraclf outside itself, so any package may import it, and it loads torch only
inside the functions that need it, so importing it stays cheap.
"""
