from .alarm import SynthCPAlarm

__all__ = ["SynthCPAlarm"]
