"""Discrete-event simulation of pipeline schedules: tables, generators, costs, engine, Timeline."""

from .actions import Action, Kind, Overlap, ScheduleError, Table, parse_action, read_csv, validate_table, write_csv
from .costs import Links, StageCost, stage_costs
from .engine import SimInput, simulate
from .placement import placement_table
from .schedules import SCHEDULES, ScheduleSpec, canonical_name, make_schedule, schedule_spec
from .timeline import Timeline, load_timeline, write_trace

__all__ = [
    "Action",
    "Kind",
    "Overlap",
    "ScheduleError",
    "Table",
    "parse_action",
    "read_csv",
    "validate_table",
    "write_csv",
    "placement_table",
    "Links",
    "StageCost",
    "stage_costs",
    "SimInput",
    "simulate",
    "SCHEDULES",
    "canonical_name",
    "make_schedule",
    "ScheduleSpec",
    "schedule_spec",
    "Timeline",
    "load_timeline",
    "write_trace",
]
