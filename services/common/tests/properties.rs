//! Property tests of what parses attacker-controlled input: tokens, events, durations, networks
//! and forwarded addresses. Arbitrary input never panics and is never mistaken for valid;
//! valid input round-trips.

use std::{net::IpAddr, time::Duration};

use chat_common::{
    config::parse_duration,
    event::{Event, MessageView},
    jwt::{JwtSettings, TokenError},
    server::{Network, TrustedProxies},
};
use proptest::prelude::*;

fn settings() -> JwtSettings {
    JwtSettings::hs256(
        b"property-secret-property-secret-0123",
        Duration::from_secs(3600),
    )
}

fn view() -> impl Strategy<Value = MessageView> {
    (
        "[0-9a-f]{24}",
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
    )
        .prop_map(|(id, sender, recipient, content, timestamp)| MessageView {
            id,
            sender,
            recipient,
            content,
            timestamp,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any string is a bad token, never a panic and never a user.
    #[test]
    fn arbitrary_text_is_never_a_token(text in any::<String>()) {
        let verifier = settings().verifier();
        prop_assert!(verifier.verify(&text).is_err());
    }

    /// Three base64url-looking parts are still refused unless signed with our key.
    #[test]
    fn token_shaped_garbage_is_refused(
        a in "[A-Za-z0-9_-]{0,60}",
        b in "[A-Za-z0-9_-]{0,200}",
        c in "[A-Za-z0-9_-]{0,90}",
    ) {
        let verifier = settings().verifier();
        let token = format!("{a}.{b}.{c}");
        prop_assert!(verifier.verify(&token).is_err());
    }

    /// Any user round-trips, and changing any one character of the token voids it.
    #[test]
    fn issued_tokens_round_trip_and_any_change_voids_them(
        id in "[0-9a-f]{24}",
        username in "\\PC{1,64}",
        at in any::<prop::sample::Index>(),
        with in any::<char>(),
    ) {
        let s = settings();
        let token = s.issuer().unwrap().issue_user(&id, &username).unwrap();
        let user = s.verifier().verify_user(&token).unwrap();
        prop_assert_eq!((user.id.as_str(), user.username.as_str()), (id.as_str(), username.as_str()));

        let mut chars: Vec<char> = token.chars().collect();
        let i = at.index(chars.len());
        prop_assume!(chars[i] != with);
        chars[i] = with;
        let tampered: String = chars.into_iter().collect();
        // A change in the signature's last character may only touch its unused low bits.
        prop_assume!(i + 1 < token.len());
        let verdict = s.verifier().verify_user(&tampered);
        prop_assert!(
            matches!(verdict, Err(TokenError::Invalid)),
            "tampered at {} with {:?}: {:?}", i, with, verdict
        );
    }

    /// Events round-trip through their bytes whatever the strings hold.
    #[test]
    fn events_round_trip(data in view()) {
        let event = Event::new_message(data);
        let decoded: Event = serde_json::from_slice(&event.to_bytes()).unwrap();
        prop_assert_eq!(decoded, event);
    }

    /// Arbitrary bytes decode to an event or to an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_event_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<Event>(&bytes);
    }

    /// Durations: whatever is accepted is what was written.
    #[test]
    fn durations_parse_exactly(n in 0u64..1_000_000, unit in prop::sample::select(vec!["", "s", "ms", "m", "h", "d"])) {
        let parsed = parse_duration(&format!("{n}{unit}")).unwrap();
        let expected = match unit {
            "ms" => Duration::from_millis(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86_400),
            _ => Duration::from_secs(n),
        };
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn arbitrary_text_never_panics_the_duration_parser(text in any::<String>()) {
        let _ = parse_duration(&text);
    }

    /// A network contains exactly the addresses that share its prefix.
    #[test]
    fn networks_contain_exactly_their_prefix(net in any::<u32>(), prefix in 0u8..=32, ip in any::<u32>()) {
        let text = format!("{}/{}", std::net::Ipv4Addr::from(net), prefix);
        let network: Network = text.parse().unwrap();
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        prop_assert_eq!(
            network.contains(IpAddr::from(std::net::Ipv4Addr::from(ip))),
            net & mask == ip & mask
        );
    }

    #[test]
    fn arbitrary_text_never_panics_the_network_parser(text in any::<String>()) {
        let _ = text.parse::<Network>();
    }

    /// Whatever `X-Forwarded-For` holds, an untrusted peer is its own client, and a trusted
    /// one's client is the peer or an address the header names.
    #[test]
    fn forwarded_for_never_lets_an_untrusted_peer_pick_its_address(
        header in "[0-9a-f:., ]{0,80}",
        peer in any::<u32>(),
    ) {
        let proxies = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", header.parse().unwrap());
        let peer = IpAddr::from(std::net::Ipv4Addr::from(peer));
        let client = proxies.client(peer, &headers);
        if proxies.0[0].contains(peer) {
            prop_assert!(
                client == peer || header.split(',').any(|h| h.trim().parse() == Ok(client))
            );
        } else {
            prop_assert_eq!(client, peer);
        }
    }
}
