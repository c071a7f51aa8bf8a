"""Front doors: the ways events enter the event log (file tail, HTTP, Kafka source).

Why a package of its own (DESIGN.md lists only core/batch/speed/serving/jobs): every
front door shares one contract -- parse, validate, quarantine durably, then append --
and none of them belongs to a layer; they feed all of them.
"""
