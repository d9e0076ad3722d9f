"""The gate controller: sets the readiness gate once Cilium manages a pod, and recycles pods Cilium never will.
The webhook's serving path (app, admission, policy) never imports this package; it reaches the API through kube.
"""
