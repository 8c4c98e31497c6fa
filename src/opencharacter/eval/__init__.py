"""Evaluation suites: PersonaGym (full and Light), MT-Bench role-play, RoleBench, Ditto-style judging.

Each suite is "build tasks from inputs" + "parse completions into records", run stage by stage
through the engine (`opencharacter.engine.runner.run_stage`), so evaluation resumes, retries,
records failures and counts cost exactly like synthesis. Results: `answers.jsonl`,
`judgements.jsonl`, `scores.json`, `report.md`, a PNG chart, `run.json` and `failures.jsonl`.
"""
