from agents import signing


def test_signature_matches_a_vector_computed_with_openssl():
    # printf '%s' '1700000000.{"seq":1}' | openssl dgst -sha256 -hmac s3cret
    assert signing.sign("s3cret", 1700000000, b'{"seq":1}') == (
        "cbdcfdffb94ac16f20fc7dff420aed60e8abb875b1394e892e008fdba0124439"
    )


def test_headers_carry_agent_id_timestamp_and_the_signature_over_timestamp_dot_body():
    body = b'{"seq":7,"gpus":[]}'
    headers = signing.headers("agent-1", "k", body, timestamp=1800000000)
    assert headers == {
        "X-Agent-Id": "agent-1",
        "X-Agent-Timestamp": "1800000000",
        "X-Agent-Signature": signing.sign("k", 1800000000, body),
    }


def test_a_changed_byte_or_timestamp_changes_the_signature():
    body = b'{"seq":7}'
    assert signing.sign("k", 1, body) != signing.sign("k", 1, b'{"seq":8}')
    assert signing.sign("k", 1, body) != signing.sign("k", 2, body)
    assert signing.sign("k", 1, body) != signing.sign("k2", 1, body)
