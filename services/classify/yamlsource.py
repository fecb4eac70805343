"""YAML loading that remembers the line of every key, so validation errors can name file:line."""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


MAX_DEPTH = 50


def load_with_lines(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML and return (data, {path: 1-based line}) for every mapping key and sequence item.

    Aliases (`*name`) are refused: rule files never need them, and a few hundred bytes of nested aliases
    expand to gigabytes ("billion laughs") or, pointing at themselves, recurse forever.
    """
    try:
        _refuse_aliases(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"{exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, str(exc)) from exc
    except RecursionError as exc:
        raise YamlSyntaxError(1, f"nested more than {MAX_DEPTH} levels deep") from exc
    lines: dict[Path_, int] = {}
    if node is None:
        return None, lines
    return _construct(node, (), lines), lines


def _refuse_aliases(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark is not None else 1
        if isinstance(event, yaml.AliasEvent):
            raise YamlSyntaxError(
                line,
                f"YAML alias *{event.anchor} is not allowed in rule files: write the value out where it is used",
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlSyntaxError(line, f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*path, key)
            if key in result:
                raise YamlSyntaxError(key_node.start_mark.line + 1, f"duplicate key {key!r}")
            lines[child] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, child, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, index), lines) for index, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except ValueError:
        # a date-looking scalar that is no date (2026-13-03): keep the text, so validation names field and line
        return node.value
    finally:
        loader.dispose()


def line_for(lines: dict[Path_, int], location: Path_) -> int:
    """The line of the deepest known prefix of a pydantic error location."""
    path = tuple(location)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), 1)
