"""The one exception type whose message is shown to users as-is: what went wrong and what to do."""


class UserError(Exception):
  """A problem with the user's input (config, data, workdir); its message is one actionable line."""
