package dev.optsidecar.server;

import dev.optsidecar.server.auth.TokenFiles;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** Mistakes with --auth-tokens: exit code 2 and one line naming the file and the entry, or the exposure. */
class MainAuthFlagsTest {
    @TempDir
    Path dir;

    private String mistake(Map<String, String> environment, String... args) {
        StringWriter err = new StringWriter();
        CommandLine cmd = Main.commandLine(environment).setErr(new PrintWriter(err));
        assertEquals(Main.EXIT_USAGE, cmd.execute(args), err.toString());
        return err.toString().lines().findFirst().orElse("");
    }

    @Test
    void aMissingOrInvalidTokenFile() throws Exception {
        Path missing = dir.resolve("missing.json");
        assertEquals("optsidecar-server: --auth-tokens " + missing + ": no such file",
                mistake(Map.of(), "--port", "0", "--auth-tokens", missing.toString()));
        Path bad = Files.writeString(dir.resolve("bad.json"), TokenFiles.of().token("ci", "t", "trainer", "*")
                .token("ops", "u", "root", "*").json());
        assertEquals("optsidecar-server: --auth-tokens " + bad + ": tokens[1] (\"ops\"): role must be \"reader\","
                        + " \"trainer\" or \"admin\", not \"root\"",
                mistake(Map.of(), "--port", "0", "--auth-tokens", bad.toString()));
        assertEquals("optsidecar-server: --auth-tokens " + bad + ": tokens[1] (\"ops\"): role must be \"reader\","
                        + " \"trainer\" or \"admin\", not \"root\"",
                mistake(Map.of("OPTSIDECAR_AUTH_TOKENS", bad.toString()), "--port", "0"));
    }

    @Test
    void tokensInPlaintextBeyondLoopbackAreRefusedAtStartup() throws Exception {
        Path tokens = TokenFiles.of().token("ci", "t", "trainer", "*").writeTo(dir.resolve("tokens.json"));
        assertEquals("optsidecar-server: --auth-tokens on plaintext 0.0.0.0:0, which other hosts reach, would send"
                        + " tokens in the clear; serve TLS (--tls-cert, --tls-key) or listen on loopback or a Unix socket",
                mistake(Map.of(), "--bind", "0.0.0.0", "--port", "0", "--auth-tokens", tokens.toString()));
        assertEquals("optsidecar-server: --auth-tokens on plaintext 0.0.0.0:0, which other hosts reach, would send"
                        + " tokens in the clear; serve TLS (--tls-cert, --tls-key) or listen on loopback or a Unix socket",
                mistake(Map.of(), "--listen", "unix:" + dir.resolve("s.sock"), "--listen", "0.0.0.0:0",
                        "--auth-tokens", tokens.toString()));
    }
}
