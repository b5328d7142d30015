"""One exception type for every user-facing mistake.

Anything the user can fix (a bad flag, a missing file, a wrong path) raises UsageError with a one-line message
that names the problem and the fix. The CLI entry points catch it, print `error: <message>` to stderr and exit
with code 2 -- no traceback. Bugs in our own code are not UsageErrors and keep their traceback.

Layer: core.
"""
import argparse
import os
import sys


class UsageError(Exception):
    """A problem with the user's input. The message is one line: what is wrong, and how to fix it."""


def first_line(e, limit=160):
    """The first line of an exception's message (cut to `limit`): what a one-line error quotes of a library's."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


def exit_on_usage_error(main):
    """Decorator for CLI entry points: UsageError -> one line on stderr, exit code 2. A reader that stops early
    (`... | head`) ends the command quietly, as it ends `ls | head`, instead of with a traceback."""
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()  # inside the try: output still buffered when main returns meets the closed pipe here
            return result
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:
            # Python's advice: point stdout at devnull so the interpreter's final flush does not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
    wrapper.__name__ = main.__name__
    wrapper.__doc__ = main.__doc__
    return wrapper


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (`error: ...`) and exit code 2, without the usage dump. Every command
    line of the project uses it."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} -h)", file=sys.stderr)
        sys.exit(2)
