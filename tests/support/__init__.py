"""What the tests share: waiting, private servers, a worker in the test's loop, and tools the
machine must have. One place for each (docs/design.md, "Module map", tests)."""
