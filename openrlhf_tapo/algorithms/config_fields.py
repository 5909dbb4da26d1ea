"""Help text kept in a config field's metadata, from which the launcher generates the field's dotted flag."""


def doc(text: str, **flag) -> dict:
    """A field's documentation: the launcher generates `--<estimator>.<field>` from the field, with this help. `flag`
    adds what the type alone does not say: `choices`, or for a bool the name of its off switch."""
    return {"help": text, **flag}
