"""A plain Python assistant for tests: answers every message with a short fixed reply."""


def reply(messages):
    return f"Noted ({len(messages)} messages so far). What else?"
