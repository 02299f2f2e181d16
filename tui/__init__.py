"""sluice's operator console (Textual), a client of the admin API only.

`run_console(url, token)` runs it; `load_token(token_file=None)` reads the admin token from
SLUICE_ADMIN_TOKEN or a file; `tui.app.SluiceConsole(url, token)` is the app itself and
`tui.client.AdminClient(url, token)` the API client.
"""

from .cli import add_console_arguments, console_main, load_token, run_console

__all__ = ["add_console_arguments", "console_main", "load_token", "run_console"]
