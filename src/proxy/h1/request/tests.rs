use super::*;

fn limits() -> HttpLimits {
    HttpLimits::default()
}

fn parse_str(head: &str) -> Result<RequestHead, Reject> {
    parse(head.as_bytes(), &limits())
}

fn rejected(head: &str) -> Reject {
    match parse_str(head) {
        Ok(_) => panic!("accepted: {head:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_plain_get_is_parsed() {
    let text = "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\nrest";
    let head = parse_str(text).unwrap();
    let buf = text.as_bytes();
    assert_eq!(head.len, text.len() - 4);
    assert_eq!(head.method, Method::GET);
    assert_eq!(head.target.get(buf), b"/a?b=1");
    assert_eq!(head.path_and_query(buf), b"/a?b=1");
    assert_eq!(head.form, Target::Origin);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.host.unwrap().get(buf), b"example.test");
    assert_eq!(head.framing, Framing::Empty);
    assert!(!head.close);
    assert!(!head.websocket);
    assert_eq!(head.fields.len(), 2);
    assert_eq!(head.fields[1].name.get(buf), b"Accept");
    assert_eq!(head.fields[1].kind, Kind::Other);
}

#[test]
fn framing_follows_the_one_length_or_chunked() {
    let cl = parse_str("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").unwrap();
    assert_eq!(cl.framing, Framing::Length(12));
    let zero = parse_str("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(zero.framing, Framing::Empty);
    let te =
        parse_str("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n").unwrap();
    assert_eq!(te.framing, Framing::Chunked);
}

#[test]
fn every_framing_rule_is_a_400() {
    for (head, why) in [
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "Transfer-Encoding with Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding with Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding other than chunked"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", "Transfer-Encoding other than chunked"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "more than one Transfer-Encoding"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding in an HTTP/1.0 request"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "more than one Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "invalid Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", "invalid Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", "invalid Content-Length"),
    ] {
        assert_eq!(rejected(head), Reject::Bad(why), "{head:?}");
    }
}

#[test]
fn host_must_be_one_and_valid_in_http_1_1() {
    assert_eq!(
        rejected("GET / HTTP/1.1\r\n\r\n"),
        Reject::Bad("missing Host")
    );
    assert_eq!(
        rejected("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        Reject::Bad("more than one Host")
    );
    for bad in [
        "a b", "a/b", "a@b", "a:80x", "[::1", "[::1]x", "a:123456", "a\"b", "[]",
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        assert_eq!(rejected(&head), Reject::Bad("invalid Host"), "{bad}");
    }
    for good in [
        "a",
        "a:80",
        "a.b-c_d~e",
        "10.0.0.1:8080",
        "[::1]",
        "[::1]:443",
        "xn--bcher-kva.example",
        "",
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
        assert!(parse_str(&head).is_ok(), "{good}");
    }
    let old = parse_str("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(old.host.is_none());
}

#[test]
fn target_forms() {
    assert_eq!(
        rejected("GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
        Reject::Bad("asterisk-form target without OPTIONS")
    );
    assert_eq!(
        parse_str("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .form,
        Target::Asterisk
    );
    assert_eq!(
        rejected("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n"),
        Reject::Bad("invalid request target")
    );
    let text = "GET http://svc.test:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n";
    let head = parse_str(text).unwrap();
    let Target::Absolute { authority, path } = head.form else {
        panic!("absolute-form expected");
    };
    assert_eq!(authority.get(text.as_bytes()), b"svc.test:81");
    assert_eq!(path.get(text.as_bytes()), b"/x?y");
    let bare = "GET HTTPS://svc.test HTTP/1.1\r\nHost: svc.test\r\n\r\n";
    let head = parse_str(bare).unwrap();
    assert!(matches!(head.form, Target::Absolute { path, .. } if path.is_empty()));
    for bad in [
        "x",
        "ftp://a/",
        "http:///x",
        "http://u@a/",
        "http://a b/",
        "http://a:x/",
        "http://a^b/",
        "*x",
    ] {
        let head = format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(rejected(&head), Reject::Bad(_)), "{bad}");
    }
    assert_eq!(
        parse_str("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
            .unwrap()
            .form,
        Target::Authority
    );
}

#[test]
fn malformed_lines_are_refused() {
    for head in [
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(matches!(rejected(head), Reject::Bad(_)), "{head:?}");
    }
}

#[test]
fn underscores_in_names_are_refused_unless_allowed() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nX_User: 1\r\n\r\n";
    assert_eq!(rejected(head), Reject::Bad("underscore in a header name"));
    let allowed = HttpLimits {
        allow_underscore_headers: true,
        ..limits()
    };
    assert!(parse(head.as_bytes(), &allowed).is_ok());
}

#[test]
fn limits_give_431_414_and_413() {
    let small = HttpLimits {
        max_request_head_bytes: 1024,
        max_request_headers: 3,
        max_uri_bytes: 16,
        max_body_bytes: 10,
        ..limits()
    };
    let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(
        parse(many.as_bytes(), &small).err(),
        Some(Reject::HeadTooLarge)
    );
    let three = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    assert!(parse(three.as_bytes(), &small).is_ok());
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n\r\n",
        "x".repeat(1000)
    );
    assert_eq!(
        parse(long.as_bytes(), &small).err(),
        Some(Reject::HeadTooLarge)
    );
    let uri = "GET /0123456789abcdef HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(
        parse(uri.as_bytes(), &small).err(),
        Some(Reject::UriTooLong)
    );
    let uri_ok = "GET /0123456789abcde HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(parse(uri_ok.as_bytes(), &small).is_ok());
    let body = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
    assert_eq!(
        parse(body.as_bytes(), &small).err(),
        Some(Reject::BodyTooLarge)
    );
    let body_ok = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    assert!(parse(body_ok.as_bytes(), &small).is_ok());
}

#[test]
fn partial_heads_are_judged_on_size_and_target() {
    let small = HttpLimits {
        max_request_head_bytes: 1024,
        max_uri_bytes: 16,
        ..limits()
    };
    assert_eq!(check_partial(b"GET /0123456789abcde", &small), Ok(()));
    assert_eq!(
        check_partial(b"GET /0123456789abcdef", &small),
        Err(Reject::UriTooLong)
    );
    assert_eq!(
        check_partial(b"GET /0123456789abcdef HTTP/1.1\r\n", &small),
        Err(Reject::UriTooLong)
    );
    let big = format!("GET / HTTP/1.1\r\nA: {}", "x".repeat(1024));
    assert_eq!(
        check_partial(big.as_bytes(), &small),
        Err(Reject::HeadTooLarge)
    );
    let exact = &big.as_bytes()[..1024];
    assert_eq!(
        check_partial(exact, &small),
        Ok(()),
        "exactly the limit is allowed"
    );
    assert_eq!(
        check_partial(&big.as_bytes()[..1025], &small),
        Err(Reject::HeadTooLarge)
    );
}

#[test]
fn the_end_of_a_head_is_found_however_it_arrives() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
    assert_eq!(find_end(head, 0), Some(head.len() - 4));
    for split in 0..head.len() - 4 {
        assert_eq!(find_end(&head[..split], 0), None, "{split}");
        assert_eq!(find_end(head, split), Some(head.len() - 4), "{split}");
    }
    assert_eq!(find_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
}

#[test]
fn connection_decides_keep_alive_and_websocket() {
    assert!(
        parse_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .close
    );
    assert!(parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().close);
    assert!(
        !parse_str("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .close
    );
    let ws = parse_str("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n").unwrap();
    assert!(ws.websocket);
    let h2c = parse_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
        .unwrap();
    assert!(!h2c.websocket);
}
