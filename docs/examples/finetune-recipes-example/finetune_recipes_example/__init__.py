"""A recipe pack: registers the recipes in the `recipes/` folder beside this file.

That is all a pack needs: `finetune recipes` lists them, and a recipe anywhere builds on one with
`extends = "finetune-recipes-example:sentiment-base"` (distribution name, colon, recipe name).
"""

from pathlib import Path

from runner import hookimpl

RECIPES = Path(__file__).parent / "recipes"


@hookimpl
def register_recipes(register):
    register(RECIPES)
