"""What-if scenarios: sweeps, operating regions and profit.

Not built yet: see the open issue "What-if scenarios".
"""
