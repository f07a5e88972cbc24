"""Recipes: from TOML files to a validated, resolved recipe.

Owns reading (`load`: files, `extends`, `--set`, the file and line of every key), validation
against the components the plugins registered (`validate`, `paths`), the resolved recipe the
pipeline runs (`resolved`) and the checks that need the heavy libraries (`build_check`).
May import the public API and `plugins` (the registry); imports no torch.
"""
