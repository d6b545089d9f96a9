"""An Inspect task that the integration test runs with ``inspect eval`` (user model given with -T user=...)."""

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import includes

from userlm.integrations.inspect_solver import simulated_user, user_ended


@task
def trip_planning(user: str, max_turns: int = 3):
    samples = [
        Sample(id="lisbon", input="You are a user chatting with an assistant to plan a cheap weekend trip to Lisbon.", target="Lisbon"),
        Sample(id="lasagna", input="You are a user chatting with an assistant to get a vegan lasagna recipe.", target="lasagna"),
    ]
    return Task(dataset=samples, solver=simulated_user(user, max_turns=int(max_turns)), scorer=[includes(), user_ended()])
