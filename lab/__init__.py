"""splitmq.lab: emulation and orchestration, never on the serving path.

Emulated links, device and server speeds, a simulated battery, roles spawned as
processes, the demo and its scenarios, and the one run summary. The device
runtime, the workers and ``shared.runtime`` import nothing from here: the lab
plugs into them through their seams.
"""
