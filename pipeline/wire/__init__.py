"""Every message format tickcast reads or writes, in one place: tick messages in (``ticks``), forecast messages
out as JSON or Arrow IPC (``forecasts``), dead letters and the record a producer sends (``outgoing``), and the
Arrow schemas shared by forecast messages and forecast files (``schemas``). The formats are documented in the
README (input and output messages, dead letters); no module here knows a Kafka client or the live runtime.
"""
