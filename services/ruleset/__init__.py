"""Loading a rule set (rule files, lists, templates, examples) into a RuleSet; hot reload; the last good set."""
