//! Currency exchange (DESIGN.md section 9): rates, quotes (expiry and single use on a clock the
//! test drives), exchanges with their five legs and exponents, limits and the overdraft floor
//! on the debited side, whole reversals at the recorded rate, bad input, and conservation per
//! currency after a concurrent mix of exchanges and transfers on two instances.

use std::sync::Arc;

use chrono::{TimeDelta, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::clock::{Clock, ManualClock};

use crate::helpers::{
    check, Reply, TestApp, TestUser, ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_USERNAME,
};

const EXCHANGE: &str = "/api/v1/transactions/exchange";
const QUOTES: &str = "/api/v1/fx/quotes";
const FEES: &str = "00000000-0000-0000-0000-000000000001";
const SYSTEM: &str = "00000000-0000-0000-0000-000000000000";

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 5, 4, 9, 0, 0).unwrap(),
    ))
}

async fn spawn_on(clock: &Arc<ManualClock>, database_url: Option<String>) -> (TestApp, TestUser) {
    let app = TestApp::spawn_with_clock(clock.clone(), move |settings| {
        settings.bootstrap.admin_username = ADMIN_USERNAME.to_owned();
        settings.bootstrap.admin_email = ADMIN_EMAIL.to_owned();
        settings.bootstrap.admin_password = ADMIN_PASSWORD.to_owned();
        if let Some(url) = database_url {
            settings.database.url = url;
        }
    })
    .await;
    let admin = app.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    (app, admin)
}

async fn put_rate(app: &TestApp, admin: &TestUser, from: &str, to: &str, body: Value) -> Reply {
    app.request(
        Method::PUT,
        &format!("/api/v1/rates/{from}/{to}"),
        Some(&admin.token),
        Some(&body),
        None,
    )
    .await
}

async fn set_rate(app: &TestApp, admin: &TestUser, from: &str, to: &str, rate: &str) {
    let reply = put_rate(
        app,
        admin,
        from,
        to,
        json!({"rate": rate, "source": "test desk"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "rate: {}", reply.body);
}

/// A balance of any account, `fees` and `system` included, straight from the database.
async fn balance_of(app: &TestApp, user: &str, currency: &str) -> i64 {
    let db = app.db().await;
    db.query_opt(
        "SELECT amount FROM balances WHERE user_id = $1::text::uuid AND currency = $2",
        &[&user, &currency],
    )
    .await
    .unwrap()
    .map_or(0, |row| row.get(0))
}

#[actix_web::test]
async fn a_quoted_exchange_moves_five_legs_once_and_is_reversed_whole_by_an_admin() {
    let clock = clock();
    let (app, admin) = spawn_on(&clock, None).await;
    let anna = app.user("anna").await;
    set_rate(&app, &admin, "EUR", "USD", "1.0842").await;
    app.credit(&anna, 10_000, "EUR").await;

    // 100.00 EUR: a spread of 0.25 % (25 cents, rounded up), 99.75 EUR converted at 1.0842 is
    // 108.14895 USD, rounded down to 108.14.
    let quote = app
        .post(
            QUOTES,
            Some(&anna.token),
            &json!({"from_currency": "EUR", "to_currency": "USD", "amount": 10_000}),
        )
        .await;
    assert_eq!(quote.status, StatusCode::CREATED, "{}", quote.body);
    assert_eq!(quote.body["fee"], 25);
    assert_eq!(quote.body["to_amount"], 10_814);
    assert_eq!(quote.body["rate"], "1.0842");
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(quote.body["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires_at, clock.now() + TimeDelta::seconds(30));

    let body = json!({"quote_id": quote.body["id"]});
    let exchanged = app
        .request(
            Method::POST,
            EXCHANGE,
            Some(&anna.token),
            Some(&body),
            Some("rent-fx-1"),
        )
        .await;
    assert_eq!(exchanged.status, StatusCode::CREATED, "{}", exchanged.body);
    let transaction = &exchanged.body;
    assert_eq!(transaction["type"], "exchange");
    assert_eq!(transaction["amount"], 10_000);
    assert_eq!(transaction["currency"], "EUR");
    assert_eq!(transaction["exchange"]["to_amount"], 10_814);
    assert_eq!(transaction["exchange"]["to_currency"], "USD");
    assert_eq!(transaction["exchange"]["fee"], 25);
    assert_eq!(transaction["exchange"]["quote_id"], quote.body["id"]);
    assert_eq!(transaction["exchange"]["rate_source"], "test desk");
    assert_eq!(app.balance(&anna, "EUR").await, 0);
    assert_eq!(app.balance(&anna, "USD").await, 10_814);
    assert_eq!(balance_of(&app, FEES, "EUR").await, 25);
    assert_eq!(balance_of(&app, SYSTEM, "USD").await, -10_814);
    // system EUR: -10000 issued by the credit, +9975 taken in by the exchange.
    assert_eq!(balance_of(&app, SYSTEM, "EUR").await, -25);
    let db = app.db().await;
    let entries: i64 = db
        .query_one(
            "SELECT count(*) FROM entries WHERE transaction_id = $1::text::uuid",
            &[&transaction["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(entries, 5);

    // The retry is answered from its key; the quote cannot be used again.
    let retry = app
        .request(
            Method::POST,
            EXCHANGE,
            Some(&anna.token),
            Some(&body),
            Some("rent-fx-1"),
        )
        .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body["id"], transaction["id"]);
    app.credit(&anna, 10_000, "EUR").await;
    let again = app
        .request(
            Method::POST,
            EXCHANGE,
            Some(&anna.token),
            Some(&body),
            Some("rent-fx-2"),
        )
        .await;
    again.assert_problem(409, "quote_expired");
    let fetched = app
        .get(
            &format!(
                "/api/v1/transactions/{}",
                transaction["id"].as_str().unwrap()
            ),
            &anna.token,
        )
        .await;
    assert_eq!(fetched.body["exchange"], transaction["exchange"]);

    // Reversal: admins only, whole, at the recorded rate (the spread comes back too).
    let reverse = format!(
        "/api/v1/transactions/{}/reverse",
        transaction["id"].as_str().unwrap()
    );
    app.post(&reverse, Some(&anna.token), &json!({"reason": "mine"}))
        .await
        .assert_problem(403, "forbidden");
    let part = app
        .post(
            &reverse,
            Some(&admin.token),
            &json!({"reason": "part", "amount": 5_000}),
        )
        .await;
    part.assert_problem(422, "validation_failed");
    assert_eq!(part.error_fields(), vec!["amount"]);
    let reversed = app
        .post(
            &reverse,
            Some(&admin.token),
            &json!({"reason": "customer asked"}),
        )
        .await;
    assert_eq!(reversed.status, StatusCode::CREATED, "{}", reversed.body);
    assert_eq!(reversed.body["type"], "reversal");
    assert_eq!(reversed.body["amount"], 10_814);
    assert_eq!(reversed.body["currency"], "USD");
    assert_eq!(reversed.body["exchange"]["to_amount"], 10_000);
    assert_eq!(app.balance(&anna, "EUR").await, 20_000);
    assert_eq!(app.balance(&anna, "USD").await, 0);
    assert_eq!(balance_of(&app, FEES, "EUR").await, 0);
    app.post(&reverse, Some(&admin.token), &json!({"reason": "twice"}))
        .await
        .assert_problem(409, "not_reversible");
    let report = app.verify().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(check(&report, "exchanges").violations, 0);
}

#[actix_web::test]
async fn quotes_expire_on_the_clock_and_belong_to_their_user() {
    let clock = clock();
    let (app, admin) = spawn_on(&clock, None).await;
    let (anna, ben) = (app.user("anna").await, app.user("ben").await);
    set_rate(&app, &admin, "USD", "JPY", "151.237").await;
    app.credit(&anna, 100_000, "USD").await;
    let ask = json!({"from_currency": "USD", "to_currency": "JPY", "amount": 10_000});
    let quote = app.post(QUOTES, Some(&anna.token), &ask).await;
    assert_eq!(quote.status, StatusCode::CREATED, "{}", quote.body);
    // 100.00 USD less 25 cents at 151.237: 15085.89 yen, rounded down (JPY has no minor unit).
    assert_eq!(quote.body["to_amount"], 15_085);
    let use_it = json!({"quote_id": quote.body["id"]});
    let before = app.row_counts().await;
    app.post(EXCHANGE, Some(&ben.token), &use_it)
        .await
        .assert_problem(404, "not_found");
    clock.advance(TimeDelta::seconds(31));
    app.post(EXCHANGE, Some(&anna.token), &use_it)
        .await
        .assert_problem(409, "quote_expired");
    assert_eq!(
        app.row_counts().await,
        before,
        "a refused exchange writes nothing"
    );
    // A fresh quote at the edge of its life still works.
    let quote = app.post(QUOTES, Some(&anna.token), &ask).await;
    clock.advance(TimeDelta::seconds(29));
    let done = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"quote_id": quote.body["id"], "amount": 10_000}),
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.body);
    assert_eq!(app.balance(&anna, "JPY").await, 15_085);
}

#[actix_web::test]
async fn exchanges_respect_exponents_payees_limits_and_funds() {
    let clock = clock();
    let (app, admin) = spawn_on(&clock, None).await;
    let (anna, ben) = (app.user("anna").await, app.user("ben").await);
    set_rate(&app, &admin, "JPY", "BHD", "0.002481").await;
    app.credit(&anna, 50_000, "JPY").await;
    // 10000 JPY less 25 yen (spread rounded up) at 0.002481: 24.747975 BHD, rounded down to
    // 24.747 (3 decimals), paid to Ben.
    let paid = app
        .post(EXCHANGE, Some(&anna.token), &json!({"from_currency": "JPY", "to_currency": "BHD", "amount": 10_000, "to_user_id": ben.id}))
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.body);
    assert_eq!(paid.body["to_user_id"], json!(ben.id));
    assert_eq!(paid.body["exchange"]["to_amount"], 24_747);
    assert_eq!(app.balance(&ben, "BHD").await, 24_747);
    assert_eq!(app.balance(&anna, "JPY").await, 40_000);

    // The debited side needs the funds: refused and recorded failed, nothing moved.
    let short = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"from_currency": "JPY", "to_currency": "BHD", "amount": 40_001}),
        )
        .await;
    short.assert_problem(422, "insufficient_funds");
    // A daily debit limit on JPY counts exchanges like any debit.
    crate::limits::set_limits(
        &app,
        &admin,
        &anna,
        json!([{"kind": "daily_debit", "currency": "JPY", "value": 15_000}]),
    )
    .await;
    let over = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"from_currency": "JPY", "to_currency": "BHD", "amount": 15_001}),
        )
        .await;
    over.assert_problem(422, "limit_exceeded");
    assert_eq!(over.body["limit"]["kind"], "daily_debit");
    let fits = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"from_currency": "JPY", "to_currency": "BHD", "amount": 5_000}),
        )
        .await;
    assert_eq!(fits.status, StatusCode::CREATED, "{}", fits.body);
    // The exchange that fitted counts toward the window: 5,000 used, 10,001 more do not fit,
    // neither as an exchange nor as a plain debit; exactly the remaining 10,000 do.
    let over = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"from_currency": "JPY", "to_currency": "BHD", "amount": 10_001}),
        )
        .await;
    over.assert_problem(422, "limit_exceeded");
    assert_eq!(over.body["used"], 5_000, "{}", over.body);
    assert_eq!(over.body["remaining"], 10_000, "{}", over.body);
    let debit = app
        .post(
            "/api/v1/transactions/debit",
            Some(&anna.token),
            &json!({"amount": 10_001, "currency": "JPY"}),
        )
        .await;
    debit.assert_problem(422, "limit_exceeded");
    assert_eq!(debit.body["used"], 5_000, "{}", debit.body);
    let rest = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"from_currency": "JPY", "to_currency": "BHD", "amount": 10_000}),
        )
        .await;
    assert_eq!(rest.status, StatusCode::CREATED, "{}", rest.body);
    assert_eq!(app.balance(&anna, "JPY").await, 25_000);
    let report = app.verify().await;
    assert!(report.is_clean(), "{report}");
}

#[actix_web::test]
async fn bad_rates_quotes_and_exchanges_are_refused_and_change_nothing() {
    let clock = clock();
    let (app, admin) = spawn_on(&clock, None).await;
    let anna = app.user("anna").await;
    app.credit(&anna, 10_000, "EUR").await;
    let before = app.row_counts().await;
    for (rate, field) in [
        (json!({"rate": "0", "source": "x"}), "rate"),
        (json!({"rate": "-1", "source": "x"}), "rate"),
        (json!({"rate": 1.5, "source": "x"}), "rate"),
        (json!({"rate": "1.5e3", "source": "x"}), "rate"),
        (json!({"rate": "abc", "source": "x"}), "rate"),
        (json!({"rate": "1.0000000000001", "source": "x"}), "rate"),
        (json!({"rate": "1.1", "source": " "}), "source"),
        (json!({"rate": "1.1"}), "source"),
        (
            json!({"rate": "1.1", "source": "x", "valid_until": "2020-01-01T00:00:00Z"}),
            "valid_until",
        ),
    ] {
        let reply = put_rate(&app, &admin, "EUR", "USD", rate.clone()).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.error_fields(), vec![field], "{rate}");
    }
    let same = put_rate(
        &app,
        &admin,
        "EUR",
        "EUR",
        json!({"rate": "1", "source": "x"}),
    )
    .await;
    same.assert_problem(422, "validation_failed");
    put_rate(
        &app,
        &admin,
        "EUR",
        "XAU",
        json!({"rate": "1", "source": "x"}),
    )
    .await
    .assert_problem(404, "not_found");
    put_rate(
        &app,
        &anna,
        "EUR",
        "USD",
        json!({"rate": "1", "source": "x"}),
    )
    .await
    .assert_problem(403, "forbidden");
    assert_eq!(
        app.row_counts().await,
        before,
        "a refused rate writes nothing"
    );
    // No rate, and no implied inverse.
    set_rate(&app, &admin, "USD", "EUR", "0.92").await;
    let before = app.row_counts().await;
    let none = app
        .post(
            QUOTES,
            Some(&anna.token),
            &json!({"from_currency": "EUR", "to_currency": "USD", "amount": 100}),
        )
        .await;
    none.assert_problem(422, "rate_unavailable");
    app.post(
        EXCHANGE,
        Some(&anna.token),
        &json!({"from_currency": "EUR", "to_currency": "USD", "amount": 100}),
    )
    .await
    .assert_problem(422, "rate_unavailable");
    // A rate past its validity prices nothing.
    let until = (clock.now() + TimeDelta::seconds(60)).to_rfc3339();
    let limited = put_rate(
        &app,
        &admin,
        "EUR",
        "USD",
        json!({"rate": "1.08", "source": "x", "valid_until": until}),
    )
    .await;
    assert_eq!(limited.status, StatusCode::OK, "{}", limited.body);
    clock.advance(TimeDelta::seconds(61));
    let rates = app.get("/api/v1/rates", &anna.token).await;
    let eur_usd = rates.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from_currency"] == "EUR")
        .unwrap();
    assert_eq!(eur_usd["current"], false);
    let before_exchanges = app.row_counts().await;
    app.post(
        EXCHANGE,
        Some(&anna.token),
        &json!({"from_currency": "EUR", "to_currency": "USD", "amount": 100}),
    )
    .await
    .assert_problem(422, "rate_unavailable");
    for (body, field) in [
        (
            json!({"from_currency": "EUR", "to_currency": "EUR", "amount": 100}),
            "to_currency",
        ),
        (
            json!({"from_currency": "EUR", "amount": 100}),
            "to_currency",
        ),
        (json!({"to_currency": "USD", "amount": 0}), "amount"),
        (json!({"quote_id": "not-a-uuid"}), "quote_id"),
        (
            json!({"from_currency": "USD", "to_currency": "EUR", "amount": 100, "to_user_id": SYSTEM}),
            "to_user_id",
        ),
        (
            json!({"from_currency": "USD", "to_currency": "EUR", "amount": 100, "to_user_id": FEES}),
            "to_user_id",
        ),
    ] {
        let reply = app.post(EXCHANGE, Some(&anna.token), &body).await;
        reply.assert_problem(422, "validation_failed");
        assert!(
            reply.error_fields().contains(&field.to_owned()),
            "{body}: {}",
            reply.body
        );
    }
    // One yen buys no cent.
    set_rate(&app, &admin, "JPY", "USD", "0.0066").await;
    let tiny = app
        .post(
            QUOTES,
            Some(&anna.token),
            &json!({"from_currency": "JPY", "to_currency": "USD", "amount": 1}),
        )
        .await;
    tiny.assert_problem(422, "validation_failed");
    assert_eq!(tiny.error_fields(), vec!["amount"]);
    let unknown = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"quote_id": uuid::Uuid::now_v7()}),
        )
        .await;
    unknown.assert_problem(404, "not_found");
    let after = app.row_counts().await;
    assert_eq!(after.transactions, before_exchanges.transactions);
    assert_eq!(after.entries, before.entries);
}

/// Conservation per currency after a seeded concurrent mix of exchanges (both directions, some
/// quoted, some short of funds) and transfers, from clients on two instances.
#[actix_web::test]
async fn a_concurrent_mix_of_exchanges_and_transfers_on_two_instances_conserves_every_currency() {
    let clock = clock();
    let (first, admin) = spawn_on(&clock, None).await;
    let (second, _) = spawn_on(&clock, Some(first.database_url.clone())).await;
    set_rate(&first, &admin, "EUR", "USD", "1.0842").await;
    set_rate(&first, &admin, "USD", "EUR", "0.9211").await;
    set_rate(&first, &admin, "USD", "JPY", "151.237").await;
    let mut users = Vec::new();
    for i in 0..6 {
        let user = first.user(&format!("mix{i}")).await;
        first.credit(&user, 50_000, "EUR").await;
        first.credit(&user, 50_000, "USD").await;
        users.push(user);
    }
    let users = Arc::new(users);
    let clients = (0..6).map(|client| {
        let users = users.clone();
        let app = if client % 2 == 0 { &first } else { &second };
        async move {
            let mut rng = StdRng::seed_from_u64(0xfeed + client as u64);
            let mut completed = 0;
            for _ in 0..25 {
                let payer_index = rng.random_range(0..users.len());
                let payer = &users[payer_index];
                let payee = &users[(payer_index + rng.random_range(1..users.len())) % users.len()];
                let roll: f64 = rng.random();
                let amount = rng.random_range(1..=20_000);
                let reply = if roll < 0.3 {
                    app.post("/api/v1/transactions/transfer", Some(&payer.token),
                        &json!({"to_user_id": payee.id, "amount": amount, "currency": "USD"})).await
                } else {
                    let (from, to) = [("EUR", "USD"), ("USD", "EUR"), ("USD", "JPY")][rng.random_range(0..3)];
                    if roll < 0.5 {
                        let quote = app.post(QUOTES, Some(&payer.token), &json!({"from_currency": from, "to_currency": to, "amount": amount})).await;
                        assert_eq!(quote.status, StatusCode::CREATED, "{}", quote.body);
                        app.post(EXCHANGE, Some(&payer.token), &json!({"quote_id": quote.body["id"], "to_user_id": payee.id})).await
                    } else {
                        app.post(EXCHANGE, Some(&payer.token), &json!({"from_currency": from, "to_currency": to, "amount": amount})).await
                    }
                };
                match reply.status.as_u16() {
                    201 => completed += 1,
                    422 => assert_eq!(reply.body["code"], "insufficient_funds", "{}", reply.body),
                    other => panic!("unexpected {other}: {}", reply.body),
                }
            }
            completed
        }
    });
    let completed: i32 = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .sum();
    assert!(completed > 50, "most of the mix went through: {completed}");
    let report = first.verify().await;
    assert!(report.is_clean(), "{report}");
    for name in ["conservation", "exchanges", "event_replay", "entries_sum"] {
        assert_eq!(check(&report, name).violations, 0, "{name}");
    }
}

/// Quotes are kept a day after they expire (a late use is told `quote_expired`), then forgotten
/// by the hourly sweep, which also runs when an instance starts.
#[actix_web::test]
async fn expired_quotes_are_forgotten_a_day_later() {
    let clock = clock();
    let (app, admin) = spawn_on(&clock, None).await;
    let anna = app.user("anna").await;
    set_rate(&app, &admin, "EUR", "USD", "1.0842").await;
    let ask = json!({"from_currency": "EUR", "to_currency": "USD", "amount": 100});
    let old = app.post(QUOTES, Some(&anna.token), &ask).await;
    clock.advance(TimeDelta::hours(25));
    let fresh = app.post(QUOTES, Some(&anna.token), &ask).await;
    // A second instance's start sweeps at once with the same clock.
    let (_second, _) = spawn_on(&clock, Some(app.database_url.clone())).await;
    let db = app.db().await;
    let count = |id: &Value| {
        let (db, id) = (&db, id.as_str().unwrap().to_owned());
        async move {
            db.query_one(
                "SELECT count(*) FROM fx_quotes WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let started = std::time::Instant::now();
    while count(&old.body["id"]).await != 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never swept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(&fresh.body["id"]).await,
        1,
        "a quote not a day past expiry is kept"
    );
}

/// History lists one's own exchange once (it is both payer and payee), under either currency,
/// and a payee finds a cross-currency payment under the currency it got.
#[actix_web::test]
async fn history_lists_exchanges_once_under_the_currencies_they_touch() {
    let clock = clock();
    let (app, admin) = spawn_on(&clock, None).await;
    let (anna, ben) = (app.user("anna").await, app.user("ben").await);
    set_rate(&app, &admin, "EUR", "USD", "1.0842").await;
    app.credit(&anna, 50_000, "EUR").await;
    let own = app
        .post(
            EXCHANGE,
            Some(&anna.token),
            &json!({"from_currency": "EUR", "to_currency": "USD", "amount": 10_000}),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    let paid = app
        .post(EXCHANGE, Some(&anna.token), &json!({"from_currency": "EUR", "to_currency": "USD", "amount": 5_000, "to_user_id": ben.id}))
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.body);
    let ids = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let history = "/api/v1/transactions/history";
    let all = app.get(history, &anna.token).await;
    let (own_id, paid_id) = (
        own.body["id"].as_str().unwrap(),
        paid.body["id"].as_str().unwrap(),
    );
    let listed = ids(&all);
    assert_eq!(
        listed.iter().filter(|id| *id == own_id).count(),
        1,
        "{listed:?}"
    );
    assert!(listed.iter().any(|id| id == paid_id));
    let usd = ids(&app
        .get(&format!("{history}?currency=USD"), &anna.token)
        .await);
    assert_eq!(
        usd,
        vec![own_id.to_owned()],
        "anna's USD: only her own exchange"
    );
    let eur = ids(&app
        .get(&format!("{history}?currency=EUR"), &anna.token)
        .await);
    assert!(eur.contains(&own_id.to_owned()) && eur.contains(&paid_id.to_owned()));
    let ben_usd = ids(&app
        .get(&format!("{history}?currency=USD"), &ben.token)
        .await);
    assert_eq!(ben_usd, vec![paid_id.to_owned()]);
    let ben_eur = ids(&app
        .get(&format!("{history}?currency=EUR"), &ben.token)
        .await);
    assert!(ben_eur.is_empty(), "ben got no EUR: {ben_eur:?}");
}
