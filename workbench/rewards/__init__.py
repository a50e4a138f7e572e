"""Reward functions shipped with the workbench, named in recipes as `module:function` (TRL's convention)."""
