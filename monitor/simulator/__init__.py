"""The Twilio Conference API simulator: server, in-memory state and control client."""

from monitor.simulator.callbacks import twilio_signature
from monitor.simulator.control import SimulatorControl, SimulatorControlError
from monitor.simulator.server import DEFAULT_AUTH_TOKEN, SimulatorServer, serve_forever
from monitor.simulator.state import DEFAULT_ACCOUNT_SID, SimulatorState

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "SimulatorControl",
    "SimulatorControlError",
    "SimulatorServer",
    "SimulatorState",
    "serve_forever",
    "twilio_signature",
]
