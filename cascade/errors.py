"""The one error of cascade folders and program files, in a module of its own: cascade.files and cascade.programs
both raise it, and files reads members with programs."""


class CascadeFileError(ValueError):
    """A cascade folder that cannot be used (missing, corrupt or mistyped cascade.json), in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
