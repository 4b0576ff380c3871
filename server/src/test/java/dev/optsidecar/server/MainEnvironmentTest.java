package dev.optsidecar.server;

import org.junit.jupiter.api.Test;
import picocli.CommandLine;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Flags from OPTSIDECAR_* variables, each kind of flag; the command line wins over the environment. */
class MainEnvironmentTest {
    private static Main parse(Map<String, String> environment, String... args) {
        CommandLine cmd = Main.commandLine(environment);
        cmd.parseArgs(args);
        return cmd.getCommand();
    }

    @Test
    void anIntFlag() {
        assertEquals(50051, parse(Map.of()).port);
        assertEquals(6000, parse(Map.of("OPTSIDECAR_PORT", "6000")).port);
        assertEquals(7000, parse(Map.of("OPTSIDECAR_PORT", "6000"), "--port", "7000").port);
        assertEquals(3, parse(Map.of("OPTSIDECAR_MAX_TRAINERS_PER_MODEL", "3")).maxTrainersPerModel);
        assertEquals(9090, parse(Map.of("OPTSIDECAR_HEALTH_PORT", "9090")).healthPort);
    }

    @Test
    void aPathFlag() {
        assertEquals(Path.of("/var/lib/optsidecar"),
                parse(Map.of("OPTSIDECAR_STATE_DIR", "/var/lib/optsidecar")).stateDir);
        assertEquals(Path.of("/etc/tls/tls.crt"), parse(Map.of("OPTSIDECAR_TLS_CERT", "/etc/tls/tls.crt")).tlsCert);
        assertEquals(Path.of("here"), parse(Map.of("OPTSIDECAR_STATE_DIR", "there"), "--state-dir", "here").stateDir);
    }

    @Test
    void aRepeatableFlagTakesACommaSeparatedList() {
        assertEquals(List.of("latest"), parse(Map.of("OPTSIDECAR_RESTORE", "latest")).restore);
        assertEquals(List.of("a", "b@000003"), parse(Map.of("OPTSIDECAR_RESTORE", "a,b@000003")).restore);
        assertEquals(List.of("127.0.0.1:1", "unix:/run/o.sock"),
                parse(Map.of("OPTSIDECAR_LISTEN", "127.0.0.1:1,unix:/run/o.sock")).listen);
        assertEquals(List.of("c"), parse(Map.of("OPTSIDECAR_RESTORE", "a,b"), "--restore", "c").restore);
    }

    @Test
    void aFlagFromTheEnvironmentCountsAsGiven() {
        Main listenAndPort = parse(Map.of("OPTSIDECAR_LISTEN", "unix:/run/o.sock", "OPTSIDECAR_PORT", "6000"));
        assertEquals(List.of(new ListenAddress.Tcp("127.0.0.1", 6000), new ListenAddress.Unix(Path.of("/run/o.sock"))),
                listenAndPort.listenAddresses(), "--port beside --listen serves both, as on the command line");
        assertEquals(List.of(new ListenAddress.Unix(Path.of("/run/o.sock"))),
                parse(Map.of("OPTSIDECAR_LISTEN", "unix:/run/o.sock")).listenAddresses());
        java.io.StringWriter err = new java.io.StringWriter();
        CommandLine cmd = Main.commandLine(Map.of("OPTSIDECAR_JOURNAL", "off")).setErr(new java.io.PrintWriter(err));
        assertEquals(Main.EXIT_USAGE, cmd.execute());
        assertTrue(err.toString().startsWith("optsidecar-server: --journal needs --state-dir"), err.toString());
    }

    @Test
    void aBooleanFlag() {
        assertTrue(parse(Map.of()).reflection);
        assertFalse(parse(Map.of(), "--no-reflection").reflection);
        assertFalse(parse(Map.of("OPTSIDECAR_REFLECTION", "false")).reflection);
        assertTrue(parse(Map.of("OPTSIDECAR_REFLECTION", "false"), "--reflection").reflection);
        assertTrue(parse(Map.of("OPTSIDECAR_REFLECTION", "true")).reflection);
    }

    @Test
    void aBadValueInTheEnvironmentIsAMistakeInTheFlags() {
        java.io.StringWriter err = new java.io.StringWriter();
        CommandLine cmd = Main.commandLine(Map.of("OPTSIDECAR_PORT", "http")).setErr(new java.io.PrintWriter(err));
        assertEquals(Main.EXIT_USAGE, cmd.execute());
        assertTrue(err.toString().contains("--port") && err.toString().contains("http"), err.toString());
    }

    @Test
    void variablesAreNamedAfterTheFlags() {
        assertEquals("OPTSIDECAR_TLS_CLIENT_CA", Main.EnvironmentDefaults.variable("--tls-client-ca"));
        assertEquals("OPTSIDECAR_MEMORY_LIMIT", Main.EnvironmentDefaults.variable("--memory-limit"));
    }

    @Test
    void helpSaysSo() {
        String usage = Main.commandLine(Map.of()).getUsageMessage();
        assertTrue(usage.contains("OPTSIDECAR_<FLAG>") && usage.contains("command line wins"), usage);
    }
}
