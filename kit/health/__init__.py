"""Monitoring: gradient health, Hessian, spikes, hardware counters, the doctor, the planner and FLOP counts."""
