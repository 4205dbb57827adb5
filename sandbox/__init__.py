"""The one sandbox for user code: handlers, handler checks, requirement installs, scripts.

`sandbox.jail` builds it (bubblewrap, setpriv, seccomp, cgroups, rlimits); `sandbox.worker`
hosts a TorchServe-style handler in it; `sandbox.zygote` forks confined workers from a warm
interpreter; `sandbox/host/` holds the standard-library-only code that runs inside.
"""
