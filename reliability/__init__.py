"""The reliability suite: hostile input, faults, shutdown and soak (`make reliability`).

See RELIABILITY.md for what each part proves and the table of one full run.
"""
