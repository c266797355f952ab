"""ganeti-lab: real Ganeti test labs on Vagrant + libvirt, reset in seconds, timed by phase."""

__version__ = "0.1.0"
