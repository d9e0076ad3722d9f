"""The gate controller: sets the readiness gate once Cilium manages a pod, and recycles pods Cilium never will.

rules.py decides (pure); loop.py watches and acts through webhook.kube; release.py is `--release-all`. The
webhook's serving path (app, admission, policy) never imports this package.
"""
