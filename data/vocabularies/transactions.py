"""Transaction categories: statement-descriptor patterns, merchants, MCC codes, amount scales.

Descriptors imitate real card/bank statements (``POS 4411 TESCO STORES 2231 LONDON GB``,
``AMZN Mktp US*2K3LP0``, ``UBER *TRIP``, ``SQ *BLUE BOTTLE``). Pattern slots:
``{merchant}`` a merchant of the category, ``{store}``/``{loc}`` 3-4 digit terminal numbers,
``{ref}`` a short alphanumeric reference, ``{city}``/``{cc}`` place, ``{name}`` a payee,
``{employer}`` an employer. ``amount`` is (median, log-sigma) of a log-normal in local currency;
``sign`` is -1 for money out, +1 for money in. ``card`` adds the generic card-terminal
patterns below, since most card spending looks alike whatever the shop.
"""

CARD_PATTERNS = [
    "POS {store} {merchant} {loc} {city} {cc}",
    "{merchant} {city} {cc}",
    "CARD PAYMENT TO {merchant} {city}",
    "VIS {merchant} {city} {cc}",
    "CONTACTLESS {merchant} {city}",
    "DEBIT CARD PURCHASE {merchant} {loc}",
]

CATEGORIES = {
    "groceries": {
        "mcc": ["5411", "5422", "5499"],
        "merchants": [
            "TESCO STORES", "SAINSBURYS S/MKTS", "LIDL GB", "ALDI STORES", "WHOLEFDS MKT",
            "TRADER JOE S", "KROGER", "CO-OP GROUP", "WAITROSE", "REWE MARKT", "CARREFOUR CITY",
            "ASDA STORES", "MORRISONS",
        ],
        "patterns": ["SQ *{merchant}", "{merchant} #{store}"],
        "amount": (32.0, 0.7), "sign": -1, "card": True,
    },
    "dining": {
        "mcc": ["5812", "5814", "5813"],
        "merchants": [
            "BLUE BOTTLE", "PRET A MANGER", "STARBUCKS", "COSTA COFFEE", "NANDOS", "MCDONALDS",
            "WAGAMAMA", "SHAKE SHACK", "CHIPOTLE", "LEON", "FIVE GUYS", "PIZZA EXPRESS",
        ],
        "patterns": ["SQ *{merchant}", "TST* {merchant}", "DELIVEROO {ref}", "UBER *EATS {ref}",
                     "JUST EAT.CO.UK {ref}"],
        "amount": (14.0, 0.6), "sign": -1, "card": True,
    },
    "shopping": {
        "mcc": ["5311", "5651", "5732", "5942"],
        "merchants": ["ZARA", "H&M", "IKEA", "JOHN LEWIS", "PRIMARK", "ARGOS", "CURRYS", "UNIQLO",
                      "TARGET", "BEST BUY", "WATERSTONES"],
        "patterns": ["AMZN Mktp US*{ref}", "AMAZON.CO.UK*{ref}", "AMZN MKTP DE*{ref}",
                     "EBAY O*{ref}", "PAYPAL *{merchant}", "ETSY.COM*{ref}"],
        "amount": (38.0, 0.9), "sign": -1, "card": True,
    },
    "transport": {
        "mcc": ["4121", "4111", "5541", "7523"],
        "merchants": ["SHELL", "BP", "ESSO", "TFL TRAVEL CH", "TRAINLINE", "NCP PARKING",
                      "MTA*NYCT PAYGO", "BOLT.EU"],
        "patterns": ["UBER *TRIP", "UBER *TRIP {ref}", "LYFT *RIDE {ref}", "TFL TRAVEL CH",
                     "{merchant} {loc} {city}", "RINGGO PARKING {ref}"],
        "amount": (18.0, 0.8), "sign": -1, "card": True,
    },
    "subscriptions": {
        "mcc": ["4899", "5815", "5818"],
        "merchants": ["NETFLIX.COM", "SPOTIFY", "DISNEY PLUS", "APPLE.COM/BILL", "GOOGLE *YOUTUBE",
                      "ADOBE", "MICROSOFT*365", "DROPBOX", "AUDIBLE UK", "PUREGYM"],
        "patterns": ["{merchant}", "{merchant} {ref}", "SPOTIFY P{ref}", "AMZN PRIME*{ref}",
                     "PAYPAL *{merchant}", "RECURRING {merchant}"],
        "amount": (11.0, 0.5), "sign": -1, "card": False,
    },
    "utilities": {
        "mcc": ["4900", "4814"],
        "merchants": ["BRITISH GAS", "THAMES WATER", "OCTOPUS ENERGY", "EDF ENERGY", "BT GROUP",
                      "VODAFONE", "CON EDISON", "PG&E", "COUNCIL TAX", "VIRGIN MEDIA"],
        "patterns": ["DD {merchant}", "DIRECT DEBIT {merchant} {ref}", "{merchant} DD",
                     "{merchant} BILL PAYMENT", "ACH DEBIT {merchant}"],
        "amount": (65.0, 0.6), "sign": -1, "card": False,
    },
    "travel": {
        "mcc": ["4511", "7011", "4722"],
        "merchants": ["RYANAIR", "EASYJET", "BRITISH AIRWAYS", "LUFTHANSA", "PREMIER INN",
                      "HILTON HOTELS", "MARRIOTT", "EXPEDIA", "EUROSTAR"],
        "patterns": ["{merchant} {ref}", "AIRBNB * {ref}", "BOOKING.COM HOTEL {city}",
                     "{merchant} {city} {cc}", "HOTEL AT BOOKING.COM {ref}"],
        "amount": (180.0, 0.8), "sign": -1, "card": False,
    },
    "cash_withdrawal": {
        "mcc": ["6011"],
        "merchants": ["CARDTRONICS", "NOTEMACHINE", "BARCLAYS", "HSBC", "SANTANDER", "EURONET"],
        "patterns": ["ATM WDL {merchant} {loc} {city}", "CASH {merchant} {city}",
                     "CASH WITHDRAWAL LINK {loc} {city}", "ATM {merchant} {city} {cc}",
                     "CASH WDL {loc} {city} {cc}"],
        "amount": (60.0, 0.6), "sign": -1, "card": False,
    },
    "transfers": {
        "mcc": ["4829", "6012"],
        "merchants": ["WISE", "REVOLUT", "PAYPAL", "VENMO", "ZELLE"],
        "patterns": ["FPS TO {name} REF {ref}", "TRANSFER TO SAVINGS", "SO {name} RENT",
                     "ZELLE TO {name}", "VENMO *{name}", "{merchant}*{name}",
                     "BANK TRANSFER TO {name}", "SEPA CT {name} {ref}"],
        "amount": (150.0, 1.0), "sign": -1, "card": False,
    },
    "income": {
        "mcc": ["6012"],
        "merchants": ["ACME LTD", "GLOBEX CORP", "INITECH", "NHS TRUST", "UMBRELLA PLC",
                      "CITY COUNCIL", "STRIPE PAYMENTS"],
        "patterns": ["SALARY {employer} BACS", "PAYROLL {employer} DIR DEP", "HMRC TAX REFUND",
                     "INTEREST PAID", "FPS FROM {name} REF {ref}", "BACS CREDIT {employer}",
                     "DIVIDEND {employer}"],
        "amount": (1900.0, 0.7), "sign": 1, "card": False,
    },
    "fees": {
        "mcc": ["6012"],
        "merchants": [],
        "patterns": ["MONTHLY ACCOUNT FEE", "NON-STERLING TRANSACTION FEE", "OVERDRAFT INTEREST",
                     "ATM FEE", "FOREIGN TXN FEE", "LATE PAYMENT FEE", "UNARRANGED OD FEE",
                     "CARD REPLACEMENT FEE"],
        "amount": (5.0, 0.7), "sign": -1, "card": False,
    },
    "healthcare": {
        "mcc": ["5912", "8011", "8021", "8062"],
        "merchants": ["BOOTS", "SUPERDRUG", "LLOYDS PHARMACY", "BUPA", "SPECSAVERS",
                      "BUPA DENTAL CARE", "NUFFIELD HEALTH"],
        "patterns": ["CVS/PHARMACY #{store}", "WALGREENS #{store}", "{merchant} PHARMACY {city}",
                     "DENTAL CARE {city}", "{merchant} {loc}"],
        "amount": (24.0, 0.8), "sign": -1, "card": True,
    },
    "entertainment": {
        "mcc": ["7832", "7922", "7994"],
        "merchants": ["ODEON CINEMAS", "VUE CINEMAS", "CINEWORLD", "TICKETMASTER",
                      "STEAMGAMES.COM", "PLAYSTATION NETWORK", "BOWLPLEX", "O2 ACADEMY"],
        "patterns": ["{merchant} {ref}", "TICKETMASTER*{ref}", "STEAMGAMES.COM {ref}",
                     "EVENTBRITE/{ref}"],
        "amount": (22.0, 0.7), "sign": -1, "card": True,
    },
    "insurance": {
        "mcc": ["6300"],
        "merchants": ["AVIVA INSURANCE", "ADMIRAL INS", "DIRECT LINE", "GEICO *AUTO",
                      "LV= INSURANCE", "STATE FARM"],
        "patterns": ["DD {merchant}", "{merchant} {ref}", "{merchant} PREMIUM",
                     "DIRECT DEBIT {merchant}"],
        "amount": (45.0, 0.5), "sign": -1, "card": False,
    },
}  # fmt: skip
