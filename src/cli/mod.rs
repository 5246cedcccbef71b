//! The command-line client: runs, approvals, logs and the catalog through the HTTP API.
//!
//! It never opens the store (sled allows one process per database); it talks to a running
//! `portbot serve` like any API client, acting for a user with `--as` (the API's `run_as`).

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::config::{ClientRole, Settings};
use crate::core::command_text::CommandText;

/// Where the API is and who the CLI is.
pub struct Connection {
    pub api_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub acting_as: Option<String>,
}

impl Connection {
    /// Flags and `PORTBOT_API_URL` / `PORTBOT_CLIENT_ID` / `PORTBOT_CLIENT_SECRET` win; else the
    /// server's public URL and the first admin client of the settings.
    pub fn resolve(
        settings: Option<&Settings>,
        api_url: Option<String>,
        client_id: Option<String>,
        client_secret: Option<String>,
        acting_as: Option<String>,
    ) -> anyhow::Result<Connection> {
        let admin =
            settings.and_then(|s| s.api.clients.iter().find(|c| c.role == ClientRole::Admin));
        let api_url = api_url
            .or_else(|| settings.map(|s| s.server.public_url.clone()))
            .context("give --api-url (or PORTBOT_API_URL)")?;
        let client_id = client_id
            .or_else(|| admin.map(|c| c.client_id.clone()))
            .context("give --client-id (or PORTBOT_CLIENT_ID)")?;
        let client_secret = client_secret
            .or_else(|| admin.map(|c| c.client_secret.expose().to_owned()))
            .context("give --client-secret (or PORTBOT_CLIENT_SECRET)")?;
        Ok(Connection {
            api_url: api_url.trim_end_matches('/').to_owned(),
            client_id,
            client_secret,
            acting_as,
        })
    }
}

/// An authenticated API client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    acting_as: Option<String>,
}

impl Client {
    pub async fn connect(conn: Connection) -> anyhow::Result<Client> {
        let http = reqwest::Client::new();
        let base = format!("{}/v1", conn.api_url);
        let reply = send(
            http.post(format!("{base}/auth/access_token"))
                .json(&json!({"clientId": conn.client_id, "clientSecret": conn.client_secret})),
            &conn.api_url,
        )
        .await?;
        let token = reply["accessToken"]
            .as_str()
            .context("no accessToken in the reply")?
            .to_owned();
        Ok(Client {
            http,
            base,
            token,
            acting_as: conn.acting_as,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(user) = &self.acting_as {
            request = request.query(&[("run_as", user)]);
        }
        request
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request, &self.base).await
    }
}

async fn send(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach portbot at {url}; is `portbot serve` running?"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_else(|_| json!({}));
    if body["ok"] == Value::Bool(true) {
        return Ok(body);
    }
    let message = body["message"].as_str().unwrap_or("no message");
    bail!("{message} (HTTP {})", status.as_u16())
}

/// `portbot run ACTION [ENTITY] [key=value ...]`: inputs are sent as text and typed by the
/// server exactly as chat text is.
pub async fn run(client: &Client, args: &[String]) -> anyhow::Result<()> {
    let command = CommandText::from_args(args)?;
    let (action, entity) = match command.words.as_slice() {
        [action] => (action, None),
        [action, entity] => (action, Some(entity)),
        [] => bail!("name the action: portbot run ACTION [ENTITY] [key=value ...]"),
        [_, _, extra, ..] => bail!("`{extra}` is neither an entity nor key=value"),
    };
    // Inputs go as strings; the action's schema types them (numbers, lists, ...).
    let path = format!("/actions/{action}/runs");
    let reply = client
        .call(
            reqwest::Method::POST,
            &path,
            Some(json!({"entity": entity, "properties": text_properties(&command), "inputsAsText": true})),
        )
        .await?;
    let run = &reply["run"];
    println!(
        "{} {} ({})",
        run["id"].as_str().unwrap_or("?"),
        run["status"].as_str().unwrap_or("?"),
        run["action"]["title"].as_str().unwrap_or("")
    );
    println!(
        "follow it with: portbot logs {} --follow",
        run["id"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn text_properties(command: &CommandText) -> Value {
    Value::Object(
        command
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect(),
    )
}

pub async fn runs(
    client: &Client,
    active: bool,
    action: Option<String>,
    entity: Option<String>,
) -> anyhow::Result<()> {
    let mut query = vec![("limit", "50".to_owned())];
    if active {
        query.push(("active", "true".to_owned()));
    }
    if let Some(a) = action {
        query.push(("action", a));
    }
    if let Some(e) = entity {
        query.push(("entity", e));
    }
    let reply = send(
        client
            .request(reqwest::Method::GET, "/actions/runs")
            .query(&query),
        &client.base,
    )
    .await?;
    for run in reply["runs"].as_array().into_iter().flatten() {
        println!(
            "{:<28} {:<21} {:<20} {:<16} {}",
            run["id"].as_str().unwrap_or("?"),
            run["status"].as_str().unwrap_or("?"),
            run["action"]["identifier"].as_str().unwrap_or("?"),
            run["entity"]["identifier"].as_str().unwrap_or("-"),
            run["createdBy"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

pub async fn decide(
    client: &Client,
    run: &str,
    approve: bool,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let status = if approve { "APPROVE" } else { "DECLINE" };
    let reply = client
        .call(
            reqwest::Method::PATCH,
            &format!("/actions/runs/{run}/approval"),
            Some(json!({"status": status, "description": reason})),
        )
        .await?;
    println!(
        "{} is now {}",
        run,
        reply["run"]["status"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// Prints a run's events; with `follow`, keeps printing until the run ends.
pub async fn logs(client: &Client, run: &str, follow: bool) -> anyhow::Result<()> {
    let mut after = 0u64;
    loop {
        let reply = send(
            client
                .request(reqwest::Method::GET, &format!("/actions/runs/{run}/events"))
                .query(&[("after", after)]),
            &client.base,
        )
        .await?;
        let mut ended = false;
        for event in reply["events"].as_array().into_iter().flatten() {
            after = event["seq"].as_u64().unwrap_or(after);
            ended |= event["type"] == "ENDED";
            println!("{}  {}", short_time(&event["at"]), describe(event));
        }
        if !follow || ended {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn short_time(at: &Value) -> String {
    at.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// One line per event, for people reading a terminal.
fn describe(event: &Value) -> String {
    let text = |key: &str| event[key].as_str().unwrap_or("").to_owned();
    match event["type"].as_str().unwrap_or("") {
        "CREATED" => "run created".into(),
        "APPROVAL_REQUESTED" => format!("waiting for approval ({})", text("policy")),
        "DECIDED" => {
            let verb = if text("decision") == "APPROVE" {
                "approved"
            } else {
                "declined"
            };
            let mut line = format!("{verb} by {}", text("by"));
            if let Some(d) = event["description"].as_str() {
                line.push_str(&format!(": {d}"));
            }
            if let Some(waiting) = event["waitingFor"].as_array().filter(|w| !w.is_empty()) {
                let names: Vec<&str> = waiting.iter().filter_map(Value::as_str).collect();
                line.push_str(&format!(" (still waiting for {})", names.join(", ")));
            }
            line
        }
        "STARTED" => "started".into(),
        "LOG" => format!("| {}", text("message")),
        "UPDATED" => {
            let parts: Vec<String> = ["statusLabel", "link", "summary"]
                .iter()
                .filter_map(|k| event[*k].as_str().map(|v| format!("{k}: {v}")))
                .collect();
            parts.join(", ")
        }
        "CATALOG_CHANGED" => {
            let changes: Vec<String> = event["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{} {} `{}`",
                        c["operation"].as_str().unwrap_or("?").to_lowercase(),
                        c["blueprint"].as_str().unwrap_or("?"),
                        c["identifier"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            format!("catalog: {}", changes.join(", "))
        }
        "ENDED" => format!("ended: {}", text("status")),
        other => other.to_owned(),
    }
}

/// `portbot entities BLUEPRINT [ID]`: the catalog as JSON.
pub async fn entities(client: &Client, blueprint: &str, id: Option<&str>) -> anyhow::Result<()> {
    let path = match id {
        Some(id) => format!("/blueprints/{blueprint}/entities/{id}"),
        None => format!("/blueprints/{blueprint}/entities"),
    };
    let mut reply = client.call(reqwest::Method::GET, &path, None).await?;
    let shown = match id {
        Some(_) => reply["entity"].take(),
        None => reply["entities"].take(),
    };
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}
