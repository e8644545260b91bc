import logging

log = logging.getLogger(__name__)


def run(name, numbers):
    print(f"Hello, {name}!")
    log.warning("adding %d numbers", len(numbers))
    total = sum(float(n) for n in numbers)
    print(f"total = {total}")
    return {"greeting": f"Hello, {name}!", "total": total}
