"""Loading plugins: the pluggy manager and the registry of components they register.

Owns plugin discovery (`manager`: built-ins, entry points of group `finetune`, in-process) and the
`registry` of component classes by kind and name. May import the public API only.
"""
