"""Loading plugins: the pluggy manager and the registry of components they register.

Owns plugin discovery (`manager`: built-ins, entry points of group `finetune`, in-process) and the
`registry` of what they registered: component classes by kind and name, and recipe packs
(`packs`). May import the public API only.
"""
