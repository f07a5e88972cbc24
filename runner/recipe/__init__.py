"""Recipes: from TOML files to a validated, resolved recipe.

Owns reading (`load`: files, `extends`, `--set`, the file and line of every key), key paths (`keys`:
their one spelling and the one flattening of a recipe into them), the recipe's layout (`sections`),
validation against the components the plugins registered (`validate`, `paths`), the resolved
recipe the pipeline runs (`resolved`), locks (`lockfile`) and the checks that need the heavy
libraries (`build_check`).
May import the public API and `plugins` (the registry); imports no torch.
"""
