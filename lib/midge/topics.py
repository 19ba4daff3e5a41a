# Topic names and filters: validation and the rules for '$' topics.
#
# Topics are handled as str (decoded and checked by codec.decode_utf8) and
# split into levels once per publish or subscribe.


def split(topic):
    return topic.split("/")


def name_ok(topic):
    """A topic name that may be published to: at least one character
    [MQTT-4.7.3-1] and no wildcard characters [MQTT-3.3.2-2]."""
    return topic != "" and "+" not in topic and "#" not in topic


def filter_levels(filt):
    """Levels of a well-formed topic filter, or None if it is malformed:
    empty [MQTT-4.7.3-1]; '#' not alone in the last level [MQTT-4.7.1-2];
    '+' not alone in its level [MQTT-4.7.1-3]."""
    if filt == "":
        return None
    levels = filt.split("/")
    last = len(levels) - 1
    for i in range(last + 1):
        lv = levels[i]
        if "#" in lv:
            if lv != "#" or i != last:
                return None
        elif "+" in lv and lv != "+":
            return None
    return levels


def within_limits(topic, levels, max_length, max_levels):
    """The configured size caps: max_topic_length in UTF-8 bytes,
    max_topic_levels in levels."""
    if len(levels) > max_levels or len(topic) > max_length:
        return False  # characters <= bytes: no need to encode
    return len(topic.encode()) <= max_length


def is_sys(topic):
    """Topics beginning with '$' are not matched by a filter starting with
    a wildcard [MQTT-4.7.2-1]."""
    return topic[:1] == "$"


def is_sys_reserved(topic):
    """$SYS/... belongs to the broker: clients' publishes (and wills) to it
    are acknowledged and dropped (counter sys_publish_dropped)."""
    return topic[:5] == "$SYS/" or topic == "$SYS"
