"""Windows command lines: one string per process, split by the program itself.

HCS takes `ProcessParameters.CommandLine` as a single string; the C runtime of
the started program splits it back into argv with the rules of
CommandLineToArgvW. `join_args` quotes each argument so that split gives the
original list back (the rules Go's syscall.EscapeArg and containerd's
escapeAndCombineArgs follow); `split_command_line` implements the documented
splitting rules so the tests can prove the round trip.
"""

from __future__ import annotations

from collections.abc import Iterable


def quote_arg(arg: str) -> str:
    """One argument, quoted only if it needs it."""
    if arg == "":
        return '""'
    if not any(c in arg for c in ' \t\n\v"'):
        return arg
    out = ['"']
    backslashes = 0
    for c in arg:
        if c == "\\":
            backslashes += 1
            continue
        if c == '"':
            # Backslashes before a quote are doubled, and the quote itself escaped.
            out.append("\\" * (2 * backslashes + 1) + '"')
        else:
            out.append("\\" * backslashes + c)
        backslashes = 0
    # Backslashes before the closing quote are doubled so they stay literal.
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def join_args(args: Iterable[str]) -> str:
    return " ".join(quote_arg(a) for a in args)


def split_command_line(line: str) -> list[str]:
    """argv as the Microsoft C runtime (post-2008 rules) parses a command line.

    The first argument (the program name) follows the same rules here; the
    real parser treats it specially only for quotes inside an unquoted name,
    which `join_args` never produces.
    """
    args: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return args
        current: list[str] = []
        quoted = False
        while i < n and (quoted or line[i] not in " \t"):
            if line[i] == "\\":
                start = i
                while i < n and line[i] == "\\":
                    i += 1
                count = i - start
                if i < n and line[i] == '"':
                    current.append("\\" * (count // 2))
                    if count % 2:
                        current.append('"')
                        i += 1
                else:
                    current.append("\\" * count)
                continue
            if line[i] == '"':
                if quoted and i + 1 < n and line[i + 1] == '"':
                    current.append('"')     # "" inside quotes is a literal quote
                    i += 2
                    continue
                quoted = not quoted
                i += 1
                continue
            current.append(line[i])
            i += 1
        args.append("".join(current))
