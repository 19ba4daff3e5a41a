# midge host simulator: runs the real broker under the MicroPython unix port
# with a board's heap budget and caps, drives it with a fleet of asyncio MQTT
# clients described in a scenario file, and reports what the protocol
# promised against what arrived. Entry point: tools/sim.py (see README,
# "Host simulator").
#
# Modules, one job each (imports point down):
#   cli        command line, exit codes
#   run        one run: broker, monitor, fleet, faults, then the report
#   fleet      client behaviours (sensors, subscribers, sleeps, disconnects, stalls)
#   client     one asyncio MQTT client over a raw socket, QoS flows both ways
#   monitor    the $SYS subscriber: heap, counters, store figures over time
#   progress   the live terminal line
#   brokerctl  the broker subprocess: start, kill -9, restart, stop
#   record     what happened (publishes, receipts, connection periods, faults)
#   accounting pure: which message is owed to whom, lost/dup, percentiles
#   verdict    pure: PASS / DEGRADED / FAIL from the accounting and $SYS figures
#   report     text and JSON reports;  chart  the PNG
#   scenario   scenario file loading and validation
#   mqtt       MQTT 3.1.1 / 5 encode and an incremental decoder
#   payload    the 16-byte header every simulated payload starts with
