//! nginx-style configuration: directives ending in `;`, blocks in `{}` (nginx.conf,
//! conf.d, sites-available).
//!
//! # Syntax
//!
//! Words are separated by blanks; `#` at the start of a word comments out the rest of the
//! line; `"..."` and `'...'` quote a word (`\"`, `\'`, `\\` unescaped; other escapes kept
//! as written, as nginx does); `$var` and `${var}` stay literal text. A directive is a name
//! and its arguments ending in `;`, or ending in `{` that opens a block closed by `}`.
//!
//! Errors (with line and column): a `}` with nothing to close, a `}` or end of file right
//! after a directive that lacks its `;`, a block never closed (at its `{`), a `;` or `{`
//! without a directive name, an unclosed quote, text glued to a closing quote.
//!
//! # Key paths
//!
//! The value of a simple directive is its arguments joined by single spaces (`listen 443
//! ssl` → `443 ssl`); one quoted argument stays a string, anything else gets its type
//! inferred like INI. Paths join the enclosing blocks with `.`:
//!
//! - blocks **with arguments** are named by them: `http.server[0].location[/api].proxy_pass`,
//!   `http.upstream[backend].server[0]`, `http.map[$http_upgrade $connection_upgrade]`;
//! - `http`, `events`, `stream`, `mail` and `types` (one per parent) have no index:
//!   `events.worker_connections`;
//! - every other block **without arguments** is always indexed by its position among its
//!   siblings of that name: `http.server[0]`, `http.server[1]`. Always, so adding a second
//!   server does not move the first one's keys;
//! - directives that are lists by nature are always indexed, for the same reason:
//!   `listen`, `include`, `allow`, `deny`, `rewrite`, `error_page`, `server` (in an
//!   upstream), `ssl_certificate`, `ssl_certificate_key`, `access_log`, `load_module`,
//!   `server_name` is not (it takes all its names on one line);
//! - directives that set a named thing are keyed by their first argument, the rest being
//!   the value: `proxy_set_header`, `add_header`, `fastcgi_param`, `uwsgi_param`,
//!   `scgi_param`, `grpc_set_header`, `set`, `env`, `log_format`
//!   (`proxy_set_header.Authorization`): stable paths, and a secret-named header or
//!   variable is masked by its name;
//! - any other simple directive is a scalar; if it repeats in one block it becomes a list
//!   (`x[0]`, `x[1]`) — nginx rejects most such repeats, so this is for third-party
//!   directives;
//! - an empty block emits nothing, like an empty map.

use crate::env::TextEntry;
use crate::errors::SyntaxError;

/// One directive: its name, arguments (each with whether it was quoted), and block.
struct Directive {
    name: String,
    args: Vec<(String, bool)>,
    block: Option<Vec<Directive>>,
}

const SINGLETON_BLOCKS: &[&str] = &["http", "events", "stream", "mail", "types"];
const LIST_DIRECTIVES: &[&str] = &[
    "listen",
    "include",
    "allow",
    "deny",
    "rewrite",
    "error_page",
    "server",
    "ssl_certificate",
    "ssl_certificate_key",
    "access_log",
    "load_module",
];
const KEYED_DIRECTIVES: &[&str] = &[
    "proxy_set_header",
    "add_header",
    "fastcgi_param",
    "uwsgi_param",
    "scgi_param",
    "grpc_set_header",
    "set",
    "env",
    "log_format",
];

pub(crate) fn parse_nginx(text: &str) -> Result<Vec<TextEntry>, SyntaxError> {
    let mut lexer = Lexer::new(text);
    let root = parse_block(&mut lexer, None)?;
    let mut out = Vec::new();
    flatten(&root, "", &mut out);
    Ok(out)
}

enum Token {
    Word(String, bool),
    Semicolon,
    Open,
    Close,
    Eof,
}

/// nginx's tokens, read through the text dialects' cursor.
type Lexer = crate::env::Cursor;

impl Lexer {
    /// The next nginx token and where it starts.
    fn next_nginx_token(&mut self) -> Result<(Token, usize, usize), SyntaxError> {
        loop {
            while self.peek().is_some_and(char::is_whitespace) {
                self.bump();
            }
            if self.peek() == Some('#') {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
                continue;
            }
            break;
        }
        let (line, col) = (self.line, self.col);
        let token = match self.peek() {
            None => Token::Eof,
            Some(';') => {
                self.bump();
                Token::Semicolon
            }
            Some('{') => {
                self.bump();
                Token::Open
            }
            Some('}') => {
                self.bump();
                Token::Close
            }
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let mut word = String::new();
                loop {
                    match self.bump() {
                        None => return Err(SyntaxError::new("unclosed quote", line, col)),
                        Some(c) if c == q => break,
                        Some('\\') => match self.bump() {
                            Some(c @ ('"' | '\'' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SyntaxError::new("unclosed quote", line, col)),
                        },
                        Some(c) => word.push(c),
                    }
                }
                if self.peek().is_some_and(|c| !c.is_whitespace() && !matches!(c, ';' | '{' | '}')) {
                    return Err(SyntaxError::new("unexpected text after the closing quote", self.line, self.col));
                }
                Token::Word(word, true)
            }
            Some(_) => {
                let mut word = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '\'') {
                        // `${var}` keeps its braces.
                        if c == '{' && word.ends_with('$') {
                            while let Some(c) = self.bump() {
                                word.push(c);
                                if c == '}' {
                                    break;
                                }
                            }
                            continue;
                        }
                        break;
                    }
                    self.bump();
                    if c == '\\'
                        && let Some(next) = self.bump()
                    {
                        word.push(c);
                        word.push(next);
                        continue;
                    }
                    word.push(c);
                }
                Token::Word(word, false)
            }
        };
        Ok((token, line, col))
    }
}

/// Directives up to the `}` closing the block opened at `open` (or to the end of file for
/// the top level).
fn parse_block(lexer: &mut Lexer, open: Option<(usize, usize)>) -> Result<Vec<Directive>, SyntaxError> {
    let mut out = Vec::new();
    let mut words: Vec<(String, bool)> = Vec::new();
    let mut start = (0, 0);
    loop {
        let (token, line, col) = lexer.next_nginx_token()?;
        match token {
            Token::Word(w, quoted) => {
                if words.is_empty() {
                    start = (line, col);
                }
                words.push((w, quoted));
            }
            Token::Semicolon | Token::Open if words.is_empty() => {
                return Err(SyntaxError::new("missing directive name", line, col));
            }
            Token::Semicolon => {
                let mut args = std::mem::take(&mut words);
                let name = directive_name(args.remove(0));
                out.push(Directive { name, args, block: None });
            }
            Token::Open => {
                let mut args = std::mem::take(&mut words);
                let name = directive_name(args.remove(0));
                let block = parse_block(lexer, Some((line, col)))?;
                out.push(Directive { name, args, block: Some(block) });
            }
            Token::Close | Token::Eof if !words.is_empty() => {
                return Err(SyntaxError::new("directive is missing its ';'", start.0, start.1));
            }
            Token::Close => {
                return match open {
                    Some(_) => Ok(out),
                    None => Err(SyntaxError::new("unexpected '}'", line, col)),
                };
            }
            Token::Eof => {
                return match open {
                    Some((l, c)) => Err(SyntaxError::new("block is missing its closing '}'", l, c)),
                    None => Ok(out),
                };
            }
        }
    }
}

/// A quoted empty name (a `map` entry `'' close;`) is shown as `""`.
fn directive_name((name, _): (String, bool)) -> String {
    if name.is_empty() { "\"\"".to_owned() } else { name }
}

fn join(args: &[(String, bool)]) -> (String, bool) {
    let value = args.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>().join(" ");
    (value, args.len() == 1 && args[0].1)
}

fn flatten(directives: &[Directive], prefix: &str, out: &mut Vec<TextEntry>) {
    let mut totals: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for d in directives.iter().filter(|d| d.block.is_none()) {
        *totals.entry(d.name.as_str()).or_insert(0) += 1;
    }
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut block_seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let path = |segment: &str| if prefix.is_empty() { segment.to_owned() } else { format!("{prefix}.{segment}") };
    for d in directives {
        let name = d.name.as_str();
        if let Some(children) = &d.block {
            let segment = if !d.args.is_empty() {
                format!("{name}[{}]", join(&d.args).0)
            } else if SINGLETON_BLOCKS.contains(&name) {
                name.to_owned()
            } else {
                let n = block_seen.entry(name).or_insert(0);
                *n += 1;
                format!("{name}[{}]", *n - 1)
            };
            flatten(children, &path(&segment), out);
            continue;
        }
        if KEYED_DIRECTIVES.contains(&name)
            && let Some(((first, _), rest)) = d.args.split_first()
        {
            let (value, literal) = join(rest);
            out.push(TextEntry { key: path(&format!("{name}.{first}")), value, literal });
            continue;
        }
        let (value, literal) = join(&d.args);
        let key = if LIST_DIRECTIVES.contains(&name) || totals.get(name).is_some_and(|&n| n > 1) {
            let n = seen.entry(name).or_insert(0);
            *n += 1;
            path(&format!("{name}[{}]", *n - 1))
        } else {
            path(name)
        };
        out.push(TextEntry { key, value, literal });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String)> {
        parse_nginx(text).unwrap().into_iter().map(|e| (e.key, e.value)).collect()
    }
    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }
    fn err(text: &str) -> (String, u32, u32) {
        let e = parse_nginx(text).unwrap_err();
        (e.message, e.line, e.column)
    }

    /// Debian's default nginx.conf (comments and the mail example trimmed).
    const DEBIAN_NGINX: &str = "\
user www-data;
worker_processes auto;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
include /etc/nginx/modules-enabled/*.conf;

events {
\tworker_connections 768;
\t# multi_accept on;
}

http {
\t##
\t# Basic Settings
\t##
\tsendfile on;
\ttcp_nopush on;
\ttypes_hash_max_size 2048;
\t# server_tokens off;
\tinclude /etc/nginx/mime.types;
\tdefault_type application/octet-stream;
\tssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; # Dropping SSLv3, ref: POODLE
\tssl_prefer_server_ciphers on;
\taccess_log /var/log/nginx/access.log;
\tgzip on;
\tinclude /etc/nginx/conf.d/*.conf;
\tinclude /etc/nginx/sites-enabled/*;
}
";

    /// Debian's sites-available/default (comments trimmed), with a proxied location.
    const DEBIAN_DEFAULT_SITE: &str = "\
server {
\tlisten 80 default_server;
\tlisten [::]:80 default_server;
\troot /var/www/html;
\tindex index.html index.htm index.nginx-debian.html;
\tserver_name _;
\tlocation / {
\t\ttry_files $uri $uri/ =404;
\t}
\tlocation /api {
\t\tproxy_pass http://127.0.0.1:8080;
\t\tproxy_set_header Host $host;
\t\tproxy_set_header Authorization \"Bearer abc\";
\t}
\tlocation ~ \\.php$ {
\t\tinclude snippets/fastcgi-php.conf;
\t}
}
";

    #[test]
    fn debian_nginx_conf() {
        assert_eq!(
            entries(DEBIAN_NGINX),
            vec![
                kv("user", "www-data"),
                kv("worker_processes", "auto"),
                kv("pid", "/run/nginx.pid"),
                kv("error_log", "/var/log/nginx/error.log"),
                kv("include[0]", "/etc/nginx/modules-enabled/*.conf"),
                kv("events.worker_connections", "768"),
                kv("http.sendfile", "on"),
                kv("http.tcp_nopush", "on"),
                kv("http.types_hash_max_size", "2048"),
                kv("http.include[0]", "/etc/nginx/mime.types"),
                kv("http.default_type", "application/octet-stream"),
                kv("http.ssl_protocols", "TLSv1 TLSv1.1 TLSv1.2 TLSv1.3"),
                kv("http.ssl_prefer_server_ciphers", "on"),
                kv("http.access_log[0]", "/var/log/nginx/access.log"),
                kv("http.gzip", "on"),
                kv("http.include[1]", "/etc/nginx/conf.d/*.conf"),
                kv("http.include[2]", "/etc/nginx/sites-enabled/*"),
            ]
        );
    }

    #[test]
    fn debian_default_site() {
        assert_eq!(
            entries(DEBIAN_DEFAULT_SITE),
            vec![
                kv("server[0].listen[0]", "80 default_server"),
                kv("server[0].listen[1]", "[::]:80 default_server"),
                kv("server[0].root", "/var/www/html"),
                kv("server[0].index", "index.html index.htm index.nginx-debian.html"),
                kv("server[0].server_name", "_"),
                kv("server[0].location[/].try_files", "$uri $uri/ =404"),
                kv("server[0].location[/api].proxy_pass", "http://127.0.0.1:8080"),
                kv("server[0].location[/api].proxy_set_header.Host", "$host"),
                kv("server[0].location[/api].proxy_set_header.Authorization", "Bearer abc"),
                kv("server[0].location[~ \\.php$].include[0]", "snippets/fastcgi-php.conf"),
            ]
        );
    }

    #[test]
    fn quotes_variables_repeats_and_upstreams() {
        let text = "http {\n  server { listen 80; }\n  server { listen 443 ssl; }\n  upstream backend { server a:1; server b:2 weight=2; }\n  map $http_upgrade $c { default upgrade; '' close; }\n  log_format main '$remote_addr \"$request\"';\n  x_custom a; x_custom b;\n  return 200 \"a;b{c}\\\"\";\n  set ${x}y 1;\n}\nempty { }\n";
        assert_eq!(
            entries(text),
            vec![
                kv("http.server[0].listen[0]", "80"),
                kv("http.server[1].listen[0]", "443 ssl"),
                kv("http.upstream[backend].server[0]", "a:1"),
                kv("http.upstream[backend].server[1]", "b:2 weight=2"),
                kv("http.map[$http_upgrade $c].default", "upgrade"),
                kv("http.map[$http_upgrade $c].\"\"", "close"),
                kv("http.log_format.main", "$remote_addr \"$request\""),
                kv("http.x_custom[0]", "a"),
                kv("http.x_custom[1]", "b"),
                kv("http.return", "200 a;b{c}\""),
                kv("http.set.${x}y", "1"),
            ]
        );
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(err("events {\n  worker_connections 768;\n"), ("block is missing its closing '}'".into(), 1, 8));
        assert_eq!(err("a 1;\n}\n"), ("unexpected '}'".into(), 2, 1));
        assert_eq!(err("http {\n  sendfile on\n}\n"), ("directive is missing its ';'".into(), 2, 3));
        assert_eq!(err("worker_processes auto"), ("directive is missing its ';'".into(), 1, 1));
        assert_eq!(err("http {\n  ;\n}\n"), ("missing directive name".into(), 2, 3));
        assert_eq!(err("a \"open;\n"), ("unclosed quote".into(), 1, 3));
        assert_eq!(err("a \"x\"y;\n"), ("unexpected text after the closing quote".into(), 1, 6));
    }
}
