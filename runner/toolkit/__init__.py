"""Helpers the core and plugins share: collators (`collate`), model heads and losses (`modeling`),
Hub access (`hub`), and what the core does with every bitsandbytes-quantized model (`quantized`).

What plugins may use of them is exported by `runner` (the public API); import it from there.
May import the public API modules only (components, errors, options).
"""
