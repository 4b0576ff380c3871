package dev.optsidecar.server;

import dev.optsidecar.server.tls.TestPki;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** Mistakes in the TLS and health flags: exit code 2 and one line naming the flag and the file. */
class MainTlsFlagsTest {
    @TempDir
    Path dir;

    private String mistake(String... args) {
        StringWriter err = new StringWriter();
        CommandLine cmd = Main.commandLine(Map.of()).setErr(new PrintWriter(err));
        assertEquals(Main.EXIT_USAGE, cmd.execute(args), err.toString());
        return err.toString().lines().findFirst().orElse("");
    }

    @Test
    void aCertificateWithoutItsKey() {
        assertEquals("optsidecar-server: --tls-cert needs --tls-key", mistake("--tls-cert", "c.pem"));
        assertEquals("optsidecar-server: --tls-key needs --tls-cert", mistake("--tls-key", "k.pem"));
        assertEquals("optsidecar-server: --tls-client-ca needs --tls-cert and --tls-key",
                mistake("--tls-client-ca", "ca.pem"));
    }

    @Test
    void missingUnreadableOrBadFiles() throws Exception {
        TestPki pki = TestPki.newCa(dir, "ca");
        TestPki.Leaf server = pki.server("server", 1);
        TestPki.Leaf other = pki.server("other", 1);
        Path missing = dir.resolve("missing.pem");
        Path garbage = Files.writeString(dir.resolve("garbage.pem"), "not a certificate\n");
        assertEquals("optsidecar-server: --tls-cert " + missing + ": no such file",
                mistake("--tls-cert", missing.toString(), "--tls-key", server.key().toString()));
        assertEquals("optsidecar-server: --tls-cert " + dir + ": not a readable file",
                mistake("--tls-cert", dir.toString(), "--tls-key", server.key().toString()));
        assertEquals("optsidecar-server: --tls-cert " + garbage + ": not a PEM certificate (No certificate data found)",
                mistake("--tls-cert", garbage.toString(), "--tls-key", server.key().toString()));
        String badKey = mistake("--tls-cert", server.cert().toString(), "--tls-key", server.cert().toString());
        assertEquals(true, badKey.startsWith("optsidecar-server: --tls-key " + server.cert() + ": not a PEM private key"),
                badKey);
        assertEquals("optsidecar-server: --tls-key " + other.key() + " is not the key of --tls-cert " + server.cert(),
                mistake("--tls-cert", server.cert().toString(), "--tls-key", other.key().toString()));
        assertEquals("optsidecar-server: --tls-client-ca " + garbage + ": not a PEM certificate (No certificate data found)",
                mistake("--tls-cert", server.cert().toString(), "--tls-key", server.key().toString(),
                        "--tls-client-ca", garbage.toString()));
    }

    @Test
    void healthFlags() {
        assertEquals("optsidecar-server: --health-port must be 0 to 65535 (0: any free port), not 70000",
                mistake("--health-port", "70000"));
        assertEquals("optsidecar-server: --health-bind needs --health-port", mistake("--health-bind", "127.0.0.1"));
        assertEquals("optsidecar-server: --health-bind 192.0.2.1: not an address of this machine",
                mistake("--health-port", "0", "--health-bind", "192.0.2.1"));
    }
}
