"""kod: Blender's first window opens without the splash screen (and its Quick Setup) over it.

Loaded by Blender from its system scripts' startup directory, before the splash is decided. The
preference is saved with the user's other preferences (kept with -v), so it lasts.
"""

import bpy


def register() -> None:
    view = bpy.context.preferences.view
    if view.show_splash:  # only then: a change makes Blender save the preferences when it quits
        view.show_splash = False


def unregister() -> None:
    pass
