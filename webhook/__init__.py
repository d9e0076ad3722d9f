"""cilium-startup-guard: keeps DaemonSet pods from starting before Cilium manages their network."""
